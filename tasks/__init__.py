"""One module per concern of the deploy; `deploy.py` calls them in order."""
