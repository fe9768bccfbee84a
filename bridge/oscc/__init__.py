"""The OSCC OpenMedia protocol: wire models, error codes and the REST client."""
