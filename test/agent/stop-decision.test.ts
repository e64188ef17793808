/**
 * Pure part of the SIGTERM decision: would the DaemonSet controller run the agent's pod template on this node
 * (nodeSelector, required node affinity, taints against the template's tolerations plus the ones the
 * controller adds to every daemon pod). Table-driven; the API part is in test/node/stop-decision-api.test.ts.
 */
import test from 'ava';
import type { V1Node, V1PodSpec } from '@kubernetes/client-node';
import { templateSelectsNode, tolerates } from '../../src/agent/stop-decision';

const node = (labels: Record<string, string>, taints: NonNullable<V1Node['spec']>['taints'] = []): V1Node => ({
  metadata: { name: 'node-a', labels },
  spec: { taints },
});
const spec = (s: Partial<V1PodSpec>): V1PodSpec => ({ containers: [{ name: 'agent' }], ...s });
const LINUX = { 'kubernetes.io/os': 'linux', pool: 'mesh', gen: '5' };

const cases: Array<[title: string, podSpec: V1PodSpec, n: V1Node, selects: boolean, why?: RegExp]> = [
  ['no constraints', spec({}), node(LINUX), true],
  ['nodeSelector matches', spec({ nodeSelector: { 'kubernetes.io/os': 'linux' } }), node(LINUX), true],
  ['nodeSelector value differs', spec({ nodeSelector: { pool: 'other' } }), node(LINUX), false, /nodeSelector pool=other .*pool=mesh/],
  ['nodeSelector label absent', spec({ nodeSelector: { gpu: 'yes' } }), node(LINUX), false, /gpu=<unset>/],
  [
    'affinity In matches',
    spec({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'pool', operator: 'In', values: ['mesh', 'x'] }] }] } } } }),
    node(LINUX),
    true,
  ],
  [
    'affinity: terms are ORed, expressions ANDed',
    spec({
      affinity: {
        nodeAffinity: {
          requiredDuringSchedulingIgnoredDuringExecution: {
            nodeSelectorTerms: [
              { matchExpressions: [{ key: 'pool', operator: 'In', values: ['mesh'] }, { key: 'gpu', operator: 'Exists' }] },
              { matchExpressions: [{ key: 'gen', operator: 'Gt', values: ['4'] }, { key: 'spot', operator: 'DoesNotExist' }] },
            ],
          },
        },
      },
    }),
    node(LINUX),
    true,
  ],
  [
    'affinity NotIn excludes the node',
    spec({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'pool', operator: 'NotIn', values: ['mesh'] }] }] } } } }),
    node(LINUX),
    false,
    /required node affinity/,
  ],
  [
    'affinity Lt on a non-number fails',
    spec({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'pool', operator: 'Lt', values: ['3'] }] }] } } } }),
    node(LINUX),
    false,
  ],
  [
    'affinity matchFields on metadata.name',
    spec({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchFields: [{ key: 'metadata.name', operator: 'In', values: ['node-a'] }] }] } } } }),
    node(LINUX),
    true,
  ],
  [
    'an empty term matches nothing',
    spec({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{}] } } } }),
    node(LINUX),
    false,
  ],
  ['untolerated NoSchedule taint', spec({}), node(LINUX, [{ key: 'dedicated', value: 'db', effect: 'NoSchedule' }]), false, /taint dedicated=db:NoSchedule/],
  ['PreferNoSchedule never blocks', spec({}), node(LINUX, [{ key: 'dedicated', value: 'db', effect: 'PreferNoSchedule' }]), true],
  ['tolerate everything (our manifest)', spec({ tolerations: [{ operator: 'Exists' }] }), node(LINUX, [{ key: 'dedicated', value: 'db', effect: 'NoExecute' }]), true],
  ['a drained node: unschedulable is tolerated by every daemon pod', spec({}), node(LINUX, [{ key: 'node.kubernetes.io/unschedulable', effect: 'NoSchedule' }]), true],
  ['a not-ready node keeps its daemon pods', spec({}), node(LINUX, [{ key: 'node.kubernetes.io/not-ready', effect: 'NoExecute' }]), true],
  ['network-unavailable: tolerated for host-network pods only', spec({ hostNetwork: true }), node(LINUX, [{ key: 'node.kubernetes.io/network-unavailable', effect: 'NoSchedule' }]), true],
  ['network-unavailable on a pod-network template', spec({}), node(LINUX, [{ key: 'node.kubernetes.io/network-unavailable', effect: 'NoSchedule' }]), false],
  ['our readiness taint with a matching toleration', spec({ tolerations: [{ key: 'cni.istio.io/not-ready', operator: 'Exists' }] }), node(LINUX, [{ key: 'cni.istio.io/not-ready', effect: 'NoSchedule' }]), true],
];

for (const [title, podSpec, n, selects, why] of cases) {
  test(`templateSelectsNode: ${title}`, (t) => {
    const r = templateSelectsNode(podSpec, n);
    t.is(r.selects, selects);
    if (!r.selects && why) t.regex(r.why, why);
  });
}

test('tolerates: the scheduler rule (effect, key, Exists vs Equal)', (t) => {
  const taint = { key: 'k', value: 'v', effect: 'NoSchedule' };
  t.true(tolerates({ operator: 'Exists' }, taint));
  t.true(tolerates({ key: 'k', operator: 'Exists', effect: 'NoSchedule' }, taint));
  t.false(tolerates({ key: 'k', operator: 'Exists', effect: 'NoExecute' }, taint));
  t.true(tolerates({ key: 'k', value: 'v' }, taint), 'Equal is the default operator');
  t.false(tolerates({ key: 'k', value: 'w', operator: 'Equal' }, taint));
  t.false(tolerates({ key: 'other', operator: 'Exists' }, taint));
});
