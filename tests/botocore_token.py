"""An ElastiCache IAM auth token computed by botocore's SigV4 query signer, independently of
Tidemark's signer, at a frozen signing time. Used by the system tests:

    python botocore_token.py CACHE_NAME USER_ID REGION EPOCH_SECONDS ACCESS_KEY SECRET_KEY

prints the presigned `https://CACHE_NAME/?Action=connect&User=USER_ID` URL without its scheme,
valid for 900 seconds, signed for the service `elasticache`.
"""

import datetime
import sys
from unittest import mock

import botocore.auth
import botocore.credentials
from botocore.awsrequest import AWSRequest

cache, user, region, epoch, access_key, secret_key = sys.argv[1:7]
request = AWSRequest(
    method="GET", url=f"https://{cache}/", params={"Action": "connect", "User": user}
)
signed_at = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
with mock.patch(
    "botocore.auth.get_current_datetime", return_value=signed_at.replace(tzinfo=None)
):
    botocore.auth.SigV4QueryAuth(
        botocore.credentials.Credentials(access_key, secret_key),
        "elasticache",
        region,
        expires=900,
    ).add_auth(request)
print(request.prepare().url.removeprefix("https://"))
