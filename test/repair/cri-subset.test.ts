/**
 * Our CRI subset must say nothing the real API does not: every message, field, enum value and method it
 * declares exists in Kubernetes' CRI proto (cached by scripts/setup-node-deps.sh) with the same number and
 * type, or the runtime's answers would decode into the wrong fields.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as protobuf from 'protobufjs';
import { criProtoPath } from '../../src/repair/cri';
import { CRI_PROTO, SETUP_HINT } from '../support/node-deps';

function load(file: string): protobuf.Root {
  const root = protobuf.loadSync(file);
  root.resolveAll();
  return root;
}

const keyType = (f: protobuf.Field | undefined) => (f && 'keyType' in f ? (f as unknown as protobuf.MapField).keyType : undefined);

test('every field, enum value and method of cri-subset.proto matches the CRI API', (t) => {
  if (!fs.existsSync(CRI_PROTO)) throw new Error(`${CRI_PROTO} is missing; ${SETUP_HINT}`);
  const ours = load(criProtoPath()).lookup('runtime.v1') as protobuf.Namespace;
  const real = load(CRI_PROTO);
  const realPackage = real.lookup('runtime.v1alpha2') as protobuf.Namespace;
  let checked = 0;
  for (const item of ours.nestedArray) {
    const theirs = realPackage.get(item.name);
    t.truthy(theirs, `${item.name} exists in the CRI API`);
    if (item instanceof protobuf.Type) {
      t.true(theirs instanceof protobuf.Type, `${item.name} is a message there too`);
      for (const field of item.fieldsArray) {
        const other = (theirs as protobuf.Type).fields[field.name];
        t.truthy(other, `${item.name}.${field.name} exists`);
        t.is(other?.id, field.id, `${item.name}.${field.name} number`);
        t.is(other?.type, field.type, `${item.name}.${field.name} type`);
        t.is(other?.repeated, field.repeated, `${item.name}.${field.name} repeated`);
        t.is(keyType(other), keyType(field), `${item.name}.${field.name} map key`);
        checked++;
      }
    } else if (item instanceof protobuf.Enum) {
      for (const [name, value] of Object.entries(item.values)) t.is((theirs as protobuf.Enum).values[name], value, `${item.name}.${name}`);
    } else if (item instanceof protobuf.Service) {
      for (const method of item.methodsArray) {
        const other = (theirs as protobuf.Service).methods[method.name];
        t.truthy(other, `rpc ${method.name} exists`);
        t.is(other?.requestType, method.requestType);
        t.is(other?.responseType, method.responseType);
        t.false(Boolean(other?.requestStream || other?.responseStream), `${method.name} is unary`);
      }
    }
  }
  t.true(checked >= 15, `${checked} fields checked`);
});

test('the subset declares the runtime.v1 service (v1alpha2 is reached by path) and only what the locator uses', (t) => {
  const root = load(criProtoPath());
  const service = root.lookupService('runtime.v1.RuntimeService');
  t.deepEqual(Object.keys(service.methods).sort(), ['ListPodSandbox', 'PodSandboxStatus', 'Version']);
});
