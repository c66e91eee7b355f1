// NodeService: what a client may learn about this node.
import type { Logger } from 'pino';
import type { NodeServiceHandlers } from '../generated/tetrix/agent/v1/NodeService';
import type { RotateKeyResponse } from '../generated/tetrix/agent/v1/RotateKeyResponse';
import type { RotateRequest } from '../crypto/rotation';
import { DomainError } from '../errors';
import { unary } from './handlers';

export interface NodeFacts {
  nodeId: string;
  version: string;
  cgroupMode: string;
  provenancePublicKeyPem?: () => string;
  currentKeyId?: () => string;
  /** Key rotation (src/crypto/rotation.ts): a new KEK, re-wrapping onto it, retiring old ones. */
  rotateKey?: (req: RotateRequest) => Promise<RotateKeyResponse>;
}

export function nodeHandlers(facts: NodeFacts, log: Logger): NodeServiceHandlers {
  return {
    GetNodeInfo: unary(log, 'GetNodeInfo', async () => ({
      nodeId: facts.nodeId,
      version: facts.version,
      cgroupMode: facts.cgroupMode,
      provenancePublicKeyPem: facts.provenancePublicKeyPem?.() ?? '',
      currentKeyId: facts.currentKeyId?.() ?? '',
    })),
    RotateKey: unary(log, 'RotateKey', async (req, ctx) => {
      if (ctx.principal?.kind !== 'operator') throw new DomainError('PERMISSION_DENIED', 'RotateKey: node operators only');
      if (!facts.rotateKey) throw new DomainError('FAILED_PRECONDITION', 'RotateKey: no keyring on this node');
      const retire = req.retireKeyIds ?? [];
      retire.forEach((id, i) => {
        if (!/^kek-[0-9a-f]{16}$/.test(id)) throw new DomainError('INVALID_ARGUMENT', `retire_key_ids[${i}]: not a key id`);
      });
      return facts.rotateKey({ newKey: !req.keepCurrent, rewrap: req.rewrapBackups, retire: [...new Set(retire)] });
    }),
  };
}
