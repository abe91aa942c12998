"""`python -m edge_router` / `edge-router`: start the router service."""

from edge_common.http import main as serve

from edge_router.app import create_app
from edge_router.settings import RouterSettings


def main() -> None:
    serve("router", RouterSettings, create_app)


if __name__ == "__main__":
    main()
