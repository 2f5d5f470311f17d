"""Route groups, one module per domain; `server.app` installs them."""
