"""moto server, plus ECR's layer downloads (see ecr_layers.py). Arguments are
moto_server's."""

import sys

from moto import server

import ecr_layers

if __name__ == "__main__":
    ecr_layers.install()
    server.main(sys.argv[1:])
