"""`python -m edge_vision` / `edge-vision`: start the vision service."""

from edge_common.http import main as serve

from edge_vision.app import create_app
from edge_vision.settings import VisionSettings


def main() -> None:
    serve("vision", VisionSettings, create_app)


if __name__ == "__main__":
    main()
