"""uld_train: train the ULD assistant (plain PyTorch + PEFT) and the unlearning baselines it is compared with."""
