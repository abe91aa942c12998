"""How hard a prompt is, judged by its meaning: logistic regression over its sentence embedding.

The embedding is the rag worker's (`rag.embed.<model>`, all-MiniLM-L6-v2 by default, the same
one train.py used); the weights (weights.json, written by train.py from prompts.jsonl under
the criteria in CRITERIA.md) turn it into the probability that the prompt needs the cloud
model. Pure Python: 384 multiply-adds cost microseconds and keep numpy out of the router.

The router asks for the embedding within a small budget (Judge); with no rag worker, the
wrong embedder, an error or a late answer, the policy falls back to its keyword score.
"""
