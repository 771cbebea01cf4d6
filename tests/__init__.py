"""The test suite, a package so that its helpers import as ``tests.<module>`` (and the training
worker runs as ``python -m tests.train_worker``) without touching ``sys.path``."""
