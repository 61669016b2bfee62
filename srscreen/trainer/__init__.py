"""Training: one `Trainer` (prepare, epoch, validate, checkpoint, finish) behind train and finetune.

trainer.py runs it; config.py holds the settings, split.py the train/val/test split, metrics.py the
metrics, ema.py the moving average of the weights.
"""
