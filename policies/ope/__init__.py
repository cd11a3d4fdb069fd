"""Off-policy evaluation: estimate a policy's return from the dataset alone (FQE, IS, DR)."""
