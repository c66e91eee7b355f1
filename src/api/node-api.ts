// NodeService: what a client may learn about this node.
import type { Logger } from 'pino';
import type { NodeServiceHandlers } from '../generated/tetrix/agent/v1/NodeService';
import { DomainError } from '../errors';
import { unary } from './handlers';

export interface NodeFacts {
  nodeId: string;
  version: string;
  cgroupMode: string;
  provenancePublicKeyPem?: () => string;
  currentKeyId?: () => string;
  /** Makes a new key-encryption key current; with rewrap, re-wraps every backup's data key under it. */
  rotateKey?: (rewrap: boolean) => Promise<{ keyId: string; rewrapped: number }>;
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
      return facts.rotateKey(req.rewrapBackups);
    }),
  };
}
