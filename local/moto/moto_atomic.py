"""moto server with every request applied atomically (see atomic.py), and ECR's layer
downloads (see ecr_layers.py). Arguments are moto_server's."""

import sys

from moto import server

import atomic
import ecr_layers

if __name__ == "__main__":
    atomic.install()
    ecr_layers.install()
    server.main(sys.argv[1:])
