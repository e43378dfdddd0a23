"""KFP components of FIRM's pipelines: thin wrappers that call FIRM's public Python API.

Each component runs `firm` code in the FIRM pipeline image (`cluster.pipeline_image`; the local runner uses this
environment) and passes data to the next step as immutable object-store URIs (returned as the step's output string
and carried in its artifacts' `metadata["firm_uri"]`), never as files between pods. Stage logic stays in `firm`.
"""

from firm.config import get_settings

BASE_IMAGE = get_settings().cluster.pipeline_image


def component(fn):  # type: ignore[no-untyped-def]
    """`@dsl.component` with FIRM's image and no package installation at run time (the image has everything)."""
    from kfp import dsl

    return dsl.component(fn, base_image=BASE_IMAGE, install_kfp_package=False)
