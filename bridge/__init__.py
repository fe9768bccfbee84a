"""oscc-bridge: OpenScape Contact Center OpenMedia Framework <-> RabbitMQ."""

__version__ = "0.1.0"
