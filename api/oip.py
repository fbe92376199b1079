"""The Open Inference Protocol (v2, REST) as the gateway speaks it for the ``stars`` model.

The bodies of the protocol's health, metadata and inference routes, and the mapping between its
tensors and the gateway's texts and predictions: one input ``text`` (BYTES, shape ``[-1]``), two
outputs ``stars`` (INT64, ``[-1]``) and ``probabilities`` (FP32, ``[-1, 5]``, row-major, stars
1 to 5). Besides the spec's form it takes what common clients send: a bare string as ``data``,
``shape: -1``, nested ``data`` and ``parameters.content_type: "str"`` (KServe's codec). Triton's
binary tensor data extension is refused with a clear 400: every tensor here is small text.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from api.errors import InvalidInput
from api.middleware import REQUEST_ID_PATTERN
from api.rating import Rated
from api.schemas import USER_ID_PATTERN
from starrating.labels import NUM_LABELS, STARS

PROTOCOL_PREFIX = "/v2"
INPUT_NAME = "text"
STARS_OUTPUT = "stars"
PROBABILITIES_OUTPUT = "probabilities"
OUTPUTS = (STARS_OUTPUT, PROBABILITIES_OUTPUT)
PLATFORM = "pytorch_torchserve"
BINARY_HEADER = "Inference-Header-Content-Length"
"""Triton's binary data extension: the JSON part's length, binary tensors after it."""
STRING_CONTENT_TYPES = (None, "str")
BINARY_REFUSAL = (
    "binary tensor data (Triton's binary data extension) is not supported: send JSON tensors "
    "(tritonclient: set_data_from_numpy(..., binary_data=False) and "
    "InferRequestedOutput(name, binary_data=False))"
)

_USER_ID = re.compile(USER_ID_PATTERN)

ParameterValue = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, ParameterValue]
Dim = Annotated[int, Field(ge=-1, description="-1: as many as the data holds")]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions that can be named in the path")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class OipError(BaseModel):
    """The protocol's error body (``$inference_error_response``)."""

    error: str


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=f'"{INPUT_NAME}"')
    shape: list[Dim] | Dim = Field(description="[n] (or [n, 1]); -1 for any n")
    datatype: str = Field(description='"BYTES"')
    parameters: Parameters | None = Field(
        default=None, description='"content_type": "str" is accepted'
    )
    data: StrictStr | list[StrictStr] | list[list[StrictStr]] = Field(
        description="the reviews, row-major (a bare string is one review)"
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=f'"{STARS_OUTPUT}" or "{PROBABILITIES_OUTPUT}"')
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "inputs": [
                        {
                            "name": INPUT_NAME,
                            "shape": [2],
                            "datatype": "BYTES",
                            "data": ["I loved it! I will recommend this to everyone.", "It's OK."],
                        }
                    ],
                    "parameters": {"user_id": "user-42"},
                }
            ]
        },
    )

    id: str | None = Field(
        default=None,
        pattern=REQUEST_ID_PATTERN,
        description="becomes the request id (the one /v1/feedback takes); answered back as id",
    )
    model_name: str | None = Field(default=None, description="sent by KServe's client; ignored")
    parameters: Parameters | None = Field(
        default=None, description='"user_id": who is asking, for sticky A/B assignment'
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = Field(
        default=None, description="the outputs to answer, in order; default both"
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[int] | list[float]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str = Field(description="the request id: quote it to /v1/feedback")
    parameters: Parameters = Field(description='"variant": the A/B variant that answered')
    outputs: list[ResponseOutput]


INPUTS = [TensorMetadata(name=INPUT_NAME, datatype="BYTES", shape=[-1])]
OUTPUT_METADATA = {
    STARS_OUTPUT: TensorMetadata(name=STARS_OUTPUT, datatype="INT64", shape=[-1]),
    PROBABILITIES_OUTPUT: TensorMetadata(
        name=PROBABILITIES_OUTPUT, datatype="FP32", shape=[-1, NUM_LABELS]
    ),
}


def model_metadata(name: str, versions: list[str]) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        versions=versions,
        platform=PLATFORM,
        inputs=INPUTS,
        outputs=list(OUTPUT_METADATA.values()),
    )


def _binary_requested(parameters: Parameters | None, key: str) -> bool:
    return bool(parameters and parameters.get(key) is True)


def request_texts(body: InferenceRequest) -> list[str]:
    """The reviews in the request's one input, checked against its shape and datatype."""
    (tensor,) = body.inputs
    if tensor.name != INPUT_NAME:
        raise InvalidInput(f"unknown input {tensor.name!r}: this model takes {INPUT_NAME!r}")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {INPUT_NAME!r} must be BYTES, not {tensor.datatype!r}")
    parameters = tensor.parameters or {}
    if "binary_data_size" in parameters:
        raise InvalidInput(BINARY_REFUSAL)
    if parameters.get("content_type") not in STRING_CONTENT_TYPES:
        raise InvalidInput(f'input {INPUT_NAME!r}: content_type must be "str" or absent')
    if isinstance(tensor.data, str):
        texts = [tensor.data]
    else:
        texts = [t for row in tensor.data for t in ([row] if isinstance(row, str) else row)]
    shape = [tensor.shape] if isinstance(tensor.shape, int) else tensor.shape
    if not _fits(shape, len(texts)):
        raise InvalidInput(f"input {INPUT_NAME!r} has shape {shape} but {len(texts)} elements")
    if not texts:
        raise InvalidInput(f"input {INPUT_NAME!r} holds no text")
    return texts


def _fits(shape: list[int], count: int) -> bool:
    """Whether ``count`` elements fill ``shape`` (one -1 stands for whatever is left)."""
    if not shape or len(shape) > 2 or shape.count(-1) > 1:
        return False
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        return known > 0 and count % known == 0
    return known == count


def requested_outputs(body: InferenceRequest) -> list[str]:
    """The outputs to answer, in order; refuses unknown names and binary outputs."""
    if _binary_requested(body.parameters, "binary_data_output"):
        raise InvalidInput(BINARY_REFUSAL)
    if body.outputs is None:
        return list(OUTPUTS)
    names: list[str] = []
    for output in body.outputs:
        if output.name not in OUTPUTS:
            raise InvalidInput(f"unknown output {output.name!r}: this model has {list(OUTPUTS)}")
        if _binary_requested(output.parameters, "binary_data"):
            raise InvalidInput(BINARY_REFUSAL)
        if output.name not in names:
            names.append(output.name)
    return names


def request_user_id(body: InferenceRequest, header: str | None) -> str | None:
    """``parameters.user_id`` (a string like the header's), else the ``X-User-Id`` header."""
    value = (body.parameters or {}).get("user_id")
    if value is None:
        return header
    if not isinstance(value, str) or not _USER_ID.fullmatch(value):
        raise InvalidInput("parameters.user_id must be printable ASCII without spaces, 1-128")
    return value


def infer_response(model_name: str, rated: Rated, outputs: list[str]) -> InferenceResponse:
    predictions = rated.predictions
    tensors = {
        STARS_OUTPUT: ResponseOutput(
            name=STARS_OUTPUT,
            shape=[len(predictions)],
            datatype=OUTPUT_METADATA[STARS_OUTPUT].datatype,
            data=[p.stars for p in predictions],
        ),
        PROBABILITIES_OUTPUT: ResponseOutput(
            name=PROBABILITIES_OUTPUT,
            shape=[len(predictions), NUM_LABELS],
            datatype=OUTPUT_METADATA[PROBABILITIES_OUTPUT].datatype,
            data=[p.probabilities[str(s)] for p in predictions for s in STARS],
        ),
    }
    return InferenceResponse(
        model_name=model_name,
        model_version=rated.version,
        id=rated.request_id,
        parameters={"variant": rated.assignment.variant},
        outputs=[tensors[name] for name in outputs],
    )
