"""Server: the aiohttp application, its routes and middleware, and the `backend` command."""
