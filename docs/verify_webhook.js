// Verifying a webhook in Node: the API reference's snippet (docs/api-reference.md,
// "Signature Verification"), verbatim. WEBHOOK_SECRET is the key's whole webhook
// secret as `retroiva keys create` prints it, `whsec_` prefix included.
// tests/webhook_receiver.js runs this file against every event the service sends.
const crypto = require('crypto');
function verifySignature(req) {
  const signature = req.headers['x-retroiva-signature'];
  const hash = crypto
    .createHmac('sha256', process.env.WEBHOOK_SECRET)
    .update(JSON.stringify(req.body))
    .digest('hex');
  return signature === hash;
}

module.exports = { verifySignature };
