"""Training: Medusa-1 heads on a frozen base (``train_legacy``) and Medusa-2 joint training (``train``)."""
