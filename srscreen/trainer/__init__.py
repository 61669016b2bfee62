"""Training: one `Trainer` (prepare, epoch, validate, checkpoint, finish) behind train and finetune."""
