"""Test helpers: built crystal databases and tiny models (screening_data), a local Materials Project API
(mp_server), a probe that torch.compile really compiled (compile_probe). Not tests themselves."""
