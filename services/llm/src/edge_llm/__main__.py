"""`python -m edge_llm` / `edge-llm`: start the llm service."""

from edge_common.http import main as serve

from edge_llm.app import create_app
from edge_llm.settings import LlmSettings


def main() -> None:
    serve("llm", LlmSettings, create_app)


if __name__ == "__main__":
    main()
