"""Storage: PostgreSQL (primary and replicas), Redis, migrations and the embedded services.

Plain parameterised SQL lives here, in one module per domain, as functions that take a
connection first, so actors choose where a query runs (`Database.read` / `Database.write`).
"""
