// NodeService: what a client may learn about this node.
import type { Logger } from 'pino';
import type { NodeServiceHandlers } from '../generated/tetrix/agent/v1/NodeService';
import { unary } from './handlers';

export interface NodeFacts {
  nodeId: string;
  version: string;
  cgroupMode: string;
  provenancePublicKeyPem?: () => string;
  currentKeyId?: () => string;
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
  };
}
