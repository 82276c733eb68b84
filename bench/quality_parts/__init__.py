"""bench/quality.py's parts: the datasets the protocol runs on (mini-TOFU, TOFU on SmolLM2) and the report."""
