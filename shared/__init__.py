"""Code both sides use: settings, storage, errors, job records, message schemas. No torch."""
