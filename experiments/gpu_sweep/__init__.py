"""The GPU recipe sweep the resnet recipe came from (see README.md)."""
