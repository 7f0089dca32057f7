"""Webhooks (protocol 2.4): room and message events POSTed, signed, to the application.

`events` (the wire), `signing` (the header, and `verify` for receivers), `emitter` (onto the
durable queue), `presence` (occupancy from presence's flips), `sender` (delivery with retries).
"""
