"""Security primitives: password policy, Argon2id hashing, tokens and signing keys."""
