"""The loss names the trainer accepts, importable without torch (the CLI's help text lists them)."""

LABEL_LOSS_NAMES = ("bce", "ranknet", "lambda", "hinge", "listwise")
TEACHER_LOSS_NAMES = ("kl", "margin-mse")
