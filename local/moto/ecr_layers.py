"""ECR's layer downloads, which moto lacks: GetDownloadUrlForLayer.

In AWS, a layer or config blob pushed to a repository can be read back: GetDownloadUrlForLayer
answers with a short-lived URL that serves its bytes. moto accepts layer uploads
(InitiateLayerUpload, UploadLayerPart, CompleteLayerUpload) but keeps only their sizes, and
answers GetDownloadUrlForLayer with an error. `install()` changes that and nothing else:
  * CompleteLayerUpload keeps the uploaded bytes under their digest, in the repository;
  * GetDownloadUrlForLayer answers, for a blob the repository holds, with a URL on this
    server (on the host the request was sent to, so a container that reached moto reaches
    the URL too), and with LayersNotFoundException, as ECR does, for one it does not;
  * GET /_pushdeploy_local/ecr/layers/<account>/<region>/<repository>/<digest> serves it.
"""

import re

from moto import server
from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.ecr import models as ecr
from moto.ecr import responses as ecr_responses

LAYER_PATH = "/_pushdeploy_local/ecr/layers/"
_original_complete = ecr.ECRBackend.complete_layer_upload


class LayersNotFoundException(ServiceException):
    code = "LayersNotFoundException"

    def __init__(self, digest, repository_name, registry_id):
        super().__init__(
            f"The image layer '{digest}' does not exist in the repository with name "
            f"'{repository_name}' in the registry with id '{registry_id}'",
        )


def _blobs(repository):
    if not hasattr(repository, "pushdeploy_blobs"):
        repository.pushdeploy_blobs = {}
    return repository.pushdeploy_blobs


def _complete_layer_upload(self, repository_name, upload_id, layer_digests, registry_id=None):
    repository = self._get_repository(repository_name, registry_id)
    upload = repository.uploads.get(upload_id)
    blob = bytes(upload.layer_parts) if upload is not None else None
    result = _original_complete(self, repository_name, upload_id, layer_digests, registry_id)
    _blobs(repository)[result["layerDigest"]] = blob
    return result


def _get_download_url_for_layer(self):
    repository_name = self._get_param("repositoryName")
    registry_id = self._get_param("registryId")
    digest = self._get_param("layerDigest")
    repository = self.ecr_backend._get_repository(repository_name, registry_id)
    if digest not in _blobs(repository):
        raise LayersNotFoundException(digest, repository_name, repository.registry_id)
    host = self.headers.get("Host", "localhost")
    url = (
        f"http://{host}{LAYER_PATH}{self.current_account}/{self.region}/"
        f"{repository_name}/{digest}"
    )
    return ActionResult({"downloadUrl": url, "layerDigest": digest})


def _serve(environ, start_response):
    path = environ["PATH_INFO"][len(LAYER_PATH):]
    match = re.fullmatch(r"([0-9]+)/([a-z0-9-]+)/(.+)/(sha256:[0-9a-f]{64})", path)
    blob = None
    if match:
        account, region, name, digest = match.groups()
        try:
            repository = ecr.ecr_backends[account][region]._get_repository(name)
            blob = _blobs(repository).get(digest)
        except Exception:  # no such repository: not found, below
            blob = None
    if blob is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such layer\n"]
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(blob)))],
    )
    return [blob]


def install():
    ecr.ECRBackend.complete_layer_upload = _complete_layer_upload
    ecr_responses.ECRResponse.get_download_url_for_layer = _get_download_url_for_layer
    base = server.DomainDispatcherApplication

    class _App(base):
        def __call__(self, environ, start_response):
            if environ.get("REQUEST_METHOD") == "GET" and environ.get(
                "PATH_INFO", ""
            ).startswith(LAYER_PATH):
                return _serve(environ, start_response)
            return super().__call__(environ, start_response)

    server.DomainDispatcherApplication = _App
