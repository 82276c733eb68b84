"""TOFU evaluation of unlearned models: Model Utility and Forget Quality, as TOFU computes them."""
