"""The final status of a row in the results table: `success` or the class of its failure."""

SUCCESS = "success"
FAILED_TO_DOWNLOAD = "failed_to_download"
NOT_AN_IMAGE = "not_an_image"
TOO_LARGE = "too_large"
INVALID_URL = "invalid_url"
MISSING_LABEL = "missing_label"  # imagefolder only: a row with no label has no folder
OPTED_OUT = "opted_out"  # the host's X-Robots-Tag says noai, noimageai, noindex or noimageindex
