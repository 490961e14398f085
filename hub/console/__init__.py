"""The analyst console (Flask, TLS, accounts, CSRF, roles), its queries and the SIEM export."""
