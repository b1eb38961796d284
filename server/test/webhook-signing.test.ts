import { describe, expect, it } from 'vitest';
import { signWebhook, verifyWebhook } from '#shared/webhooks.js';

// The Standard Webhooks specification's published test vector.
const VECTOR = {
  secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
  id: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: 1614265330,
  body: '{"test": 2432232314}',
  signature: 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
};

describe('standard webhooks signing', () => {
  it('when signing the spec test vector, then the signature matches the published one', () => {
    expect(signWebhook(VECTOR.secret, VECTOR.id, VECTOR.timestamp, VECTOR.body)['webhook-signature']).toBe(VECTOR.signature);
  });

  it('when verifying the spec test vector at its time, then it passes; a changed byte fails', () => {
    const input = { id: VECTOR.id, timestamp: String(VECTOR.timestamp), signature: VECTOR.signature, body: VECTOR.body, nowSeconds: VECTOR.timestamp };
    expect(verifyWebhook([VECTOR.secret], input)).toEqual({ ok: true });
    expect(verifyWebhook([VECTOR.secret], { ...input, body: '{"test": 2432232315}' })).toEqual({ ok: false, reason: 'NO_MATCHING_SIGNATURE' });
  });

  it('when several signatures or secrets are offered during a rotation, then any match passes', () => {
    const input = {
      id: VECTOR.id,
      timestamp: String(VECTOR.timestamp),
      signature: `v1,AAAA ${VECTOR.signature} v2,zzz`,
      body: VECTOR.body,
      nowSeconds: VECTOR.timestamp,
    };
    expect(verifyWebhook(['whsec_b2xkLXNlY3JldA==', VECTOR.secret], input)).toEqual({ ok: true });
  });

  it('when the timestamp is more than five minutes off either way, then it fails', () => {
    const input = { id: VECTOR.id, timestamp: String(VECTOR.timestamp), signature: VECTOR.signature, body: VECTOR.body };
    expect(verifyWebhook([VECTOR.secret], { ...input, nowSeconds: VECTOR.timestamp + 301 })).toEqual({ ok: false, reason: 'TIMESTAMP_TOO_OLD' });
    expect(verifyWebhook([VECTOR.secret], { ...input, nowSeconds: VECTOR.timestamp - 301 })).toEqual({ ok: false, reason: 'TIMESTAMP_TOO_NEW' });
    expect(verifyWebhook([VECTOR.secret], { ...input, nowSeconds: VECTOR.timestamp + 299 })).toEqual({ ok: true });
  });

  it('when headers are missing or malformed, then it fails without throwing', () => {
    expect(verifyWebhook([VECTOR.secret], { id: null, timestamp: '1', signature: 'v1,x', body: '' })).toEqual({ ok: false, reason: 'MISSING_HEADERS' });
    expect(verifyWebhook([VECTOR.secret], { id: 'a', timestamp: 'soon', signature: 'v1,x', body: '' })).toEqual({ ok: false, reason: 'BAD_TIMESTAMP' });
    expect(verifyWebhook([VECTOR.secret], { id: 'a', timestamp: String(Math.floor(Date.now() / 1000)), signature: 'garbage', body: '' })).toEqual({
      ok: false,
      reason: 'NO_MATCHING_SIGNATURE',
    });
  });
});
