"""The final status of a row in the results table: `success` or the class of its failure."""

SUCCESS = "success"
FAILED_TO_DOWNLOAD = "failed_to_download"
NOT_AN_IMAGE = "not_an_image"
TOO_LARGE = "too_large"
INVALID_URL = "invalid_url"
MISSING_LABEL = "missing_label"  # imagefolder only: a row with no label has no folder
OPTED_OUT = "opted_out"  # the host's X-Robots-Tag says noai, noimageai, noindex or noimageindex
TOO_SMALL = "too_small"  # smaller side under --min_image_size
BAD_ASPECT_RATIO = "bad_aspect_ratio"  # over --max_aspect_ratio
HASH_MISMATCH = "hash_mismatch"  # sha256 differs from the --verify_hash column
DUPLICATE = "duplicate"  # --dedupe: the same bytes are stored under another key (duplicate_of)
HOST_UNAVAILABLE = "host_unavailable"  # its host was marked down (fetch/breaker.py); retryable
LICENSE_FILTERED = "license_filtered"  # its licence is not in --license_filter (or it has none)
PRIVATE_REDIRECT = "private_redirect"  # a public URL redirected to a private address; final
CLASS_CAPPED = "class_capped"  # left out of its class's seeded sample (--max_per_class)
CLASS_TOO_SMALL = "class_too_small"  # its class has fewer rows than --min_per_class
