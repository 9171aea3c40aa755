"""The pure core: the rules of blue/green as values in, values out (no I/O, no asyncio; a contract checks it).

`routing` decides which colour serves a request and what a flip does to the state; `preview` decides who may
preview. Everything around it (data plane, admin API, stores) only carries these decisions out.
"""
