"""Certificates for tracking domains: ACME (Let's Encrypt) through certbot."""
