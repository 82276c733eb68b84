"""uld: ULD unlearning (logit difference with an assistant LLM) at vLLM speed."""
