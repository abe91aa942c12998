"""Input checks on a chat request: what no target accepts, whatever the route.

Inline images are checked here (edge_router.images); image URLs only once a route needs
their bytes (a cloud model fetches them itself).
"""

from edge_router import protocol as p
from edge_router.errors import InvalidRequest
from edge_router.images import check_header, inline_bytes, is_url
from edge_router.settings import InputLimits


def check(request: p.ChatCompletionRequest, limits: InputLimits) -> None:
    """What no target accepts, whatever the route."""
    if len(request.messages) > limits.max_messages:
        raise InvalidRequest(
            f"At most {limits.max_messages} messages are accepted.",
            param="messages",
            code="too_many_messages",
        )
    for name in ("max_tokens", "max_completion_tokens"):
        if (value := getattr(request, name)) and value > limits.max_tokens:
            raise InvalidRequest(
                f"{name} is at most {limits.max_tokens}.", param=name, code="invalid_value"
            )
    images = 0
    for i, message in enumerate(request.messages):
        if isinstance(message, p.UserMessage) and not isinstance(message.content, str):
            for j, part in enumerate(message.content):
                if not isinstance(part, p.ImagePart):
                    continue
                images += 1
                if images > limits.max_images:
                    raise InvalidRequest(
                        f"At most {limits.max_images} images are accepted in one request.",
                        param="messages",
                        code="too_many_images",
                    )
                if not is_url(url := part.image_url.url):
                    param = f"messages[{i}].content[{j}].image_url"
                    check_header(inline_bytes(url, limits.max_image_mb, param), limits, param)
    if request.n not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n", code="unsupported")
