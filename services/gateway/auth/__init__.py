"""Sign-in by token (PROTOCOL.md 2.4): verifying JWTs (`tokens`), the JWKS key cache
(`jwks`), and what a connection's sign-in and expiry do (`signin`)."""
