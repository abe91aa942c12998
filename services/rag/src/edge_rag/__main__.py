"""`python -m edge_rag` / `edge-rag`: start the rag service."""

from edge_common.http import main as serve

from edge_rag.app import create_app
from edge_rag.settings import RagSettings


def main() -> None:
    serve("rag", RagSettings, create_app)


if __name__ == "__main__":
    main()
