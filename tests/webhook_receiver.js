// A webhook receiver written exactly like the API reference: verifySignature is the
// reference's snippet, verbatim, from docs/verify_webhook.js. The server around it only
// does what express.json() would (parse the body into req.body), answers, and logs
// what it saw for the tests.
//
// usage: node webhook_receiver.js MODE LOG_PATH [PORT]
//   MODE: ok | fail (always 500) | fail:N (500 for the first N requests, then ok)
const http = require('http');
const fs = require('fs');

const { verifySignature } = require('../docs/verify_webhook.js');

const [mode, logPath, port] = process.argv.slice(2);
let seen = 0;
const server = http.createServer((req, res) => {
  let raw = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { raw += chunk; });
  req.on('end', () => {
    seen += 1;
    req.body = JSON.parse(raw);
    const valid = verifySignature(req);
    const failing = mode === 'fail' || (mode.startsWith('fail:') && seen <= Number(mode.slice(5)));
    const status = !valid ? 401 : failing ? 500 : 200;
    fs.appendFileSync(logPath, JSON.stringify({
      valid, status, id: req.body.id, type: req.body.type,
      eventId: req.headers['x-retroiva-event-id'],
      timestamp: req.headers['x-retroiva-timestamp'],
      inputUrl: req.body.data.input_url, error: req.body.data.error,
      at: Date.now() / 1000,
    }) + '\n');
    res.writeHead(status);
    res.end();
  });
});
server.listen(Number(port || 0), '127.0.0.1', () => {
  console.log(server.address().port);
});
