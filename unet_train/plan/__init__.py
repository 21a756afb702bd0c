"""``unet-plan``: a dataset fingerprint and a training plan from it (see :mod:`unet_train.plan.cli`)."""
