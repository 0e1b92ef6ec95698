"""azagent: an Azure Linux guest agent made of one-shot systemd boot stages."""

__version__ = "0.1.0"
