"""Training: the generic trainer loop and what it is made of (prompt sources, sample layout over
ranks, sharding, checkpoints, the EMA, evaluation before and after training)."""
