"""Shared foundation of the edge services: wire types, settings, logging, NATS and sysfs."""
