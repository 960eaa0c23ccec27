"""The ground floor: tables, pydantic models, database setup, migrations and the Clock."""
