"""The data plane over real sockets: forwarding, framing, websockets, streaming, flips under traffic."""
