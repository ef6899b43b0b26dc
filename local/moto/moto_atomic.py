"""moto server with every request applied atomically (see atomic.py). Arguments are
moto_server's."""

import sys

from moto import server

import atomic

if __name__ == "__main__":
    atomic.install()
    server.main(sys.argv[1:])
