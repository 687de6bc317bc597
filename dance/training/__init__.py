"""Training: the generic trainer loop and what it is made of (sample layout over ranks,
sharding, checkpoints, Best-of-N selection, the EMA)."""
